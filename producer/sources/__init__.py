"""Job sources: where image+question jobs come from. Each yields JobSpecs as a stream (never the whole
listing in memory) and validates itself before anything is written, so a bad source changes nothing.

`base` is what every source shares; `open` decides which source a SOURCE argument names and builds it."""
