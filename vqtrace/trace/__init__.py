"""Trace files: the vqtrace pcapng record format, writer, lazy indexed reader, event decoding."""
