"""msfs: the small-file store clients upload images to (TeamTalk's msfs, on our reactor)."""
