#!/bin/sh
# hello: print a message, wait, write a result, exit with the code asked for.
message=$1 sleep_s=$2 code=$3 run=$4
echo "run $run: $message"
echo "hello from stderr (run $run)" >&2
sleep "$sleep_s"
printf 'run=%s\nmessage=%s\n' "$run" "$message" > "result-$run.txt"
echo "run $run finished with code $code"
exit "$code"
