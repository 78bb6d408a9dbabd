#!/bin/sh
# Runs the given command (TotalSegmentator, totalseg_info, ...); arguments that start with an option
# (`docker run IMAGE -i ct.nii.gz -o out`) are TotalSegmentator's.
case "${1:-}" in
    -*) set -- TotalSegmentator "$@" ;;
esac
exec "$@"
