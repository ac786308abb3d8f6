"""Sources and sinks: one module per external system. All I/O of streamproc lives here."""
