"""What a suite written for another tool's fixtures needs to run unchanged on ours."""
