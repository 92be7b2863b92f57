"""`brainseg serve`: a local web viewer that segments an uploaded scan and shows it, on this machine only."""
