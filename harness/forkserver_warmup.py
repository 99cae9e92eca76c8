"""Imported by the fork server cells start from, and only there (it is last on its preload list): does
once, before any cell forks, the work every cell would otherwise repeat (`cellprocess.warm_up`)."""

from harness.cellprocess import warm_up

warm_up()
