#!/bin/sh
# Concordia's job on a grid worker node (the JDL's Executable): the Python wrapper beside
# this script fetches the image and runs the command; python3 is all a node needs.
exec python3 "$(dirname "$0")/concordia_job.py" "$@"
