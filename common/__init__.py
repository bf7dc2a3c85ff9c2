"""What every package of the project shares, in the standard library only: the client, the
service and the batch job import it as well as training and export."""
