package gradserve

// Version is this module's release, the same as every gradserve distribution's (the
// repository's VERSION file; scripts/set_version.py writes it here).
const Version = "0.1.0"
