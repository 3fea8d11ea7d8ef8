"""The names and help texts of the arriving share's metrics (``arrival.ArrivalGate``),
shared by the collector read at scrape time (``metrics``) and the copies a worker keeps in
multiprocess mode (``metrics_multiprocess``)."""

USED = "gradserve_arriving_used_bytes"
USED_HELP = (
    "Bytes of --max-arriving-mb held by reads of request messages: a whole --max-message-mb "
    "per read slot held, what those reads may let arrive at most"
)
WAITING = "gradserve_arriving_reads_waiting"
WAITING_HELP = "Reads of request messages waiting for a read slot"
TAKEN_BACK = "gradserve_arriving_taken_back"
TAKEN_BACK_HELP = (
    "Read slots taken back from calls whose request had not arrived while other reads "
    "waited (each call ended RESOURCE_EXHAUSTED naming max-arriving-mb)"
)
