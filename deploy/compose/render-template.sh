#!/bin/sh
# render-template.sh TEMPLATE OUTPUT NAME...
#
# Writes TEMPLATE to OUTPUT with every {{NAME}} replaced, verbatim, by the value of the
# environment variable NAME (values may hold newlines, slashes, '&': no regex, no sed).
# Fails if a NAME is unset or if any {{...}} is left in OUTPUT.
# POSIX sh and awk only (busybox in the nginx/haproxy alpine images, mawk/gawk elsewhere).
set -eu
if [ "$#" -lt 3 ]; then
    echo "usage: $0 TEMPLATE OUTPUT NAME..." >&2
    exit 64
fi
template=$1
output=$2
shift 2
for name in "$@"; do
    if ! eval "[ -n \"\${$name+set}\" ]"; then
        echo "render-template: environment variable $name is not set" >&2
        exit 1
    fi
    export "${name?}"
done
awk -v names="$*" '
    function replace_all(s, from, to,    done, at) {
        done = ""
        while ((at = index(s, from)) > 0) {
            done = done substr(s, 1, at - 1) to
            s = substr(s, at + length(from))
        }
        return done s
    }
    BEGIN { count = split(names, list, " ") }
    {
        line = $0
        for (k = 1; k <= count; k++)
            line = replace_all(line, "{{" list[k] "}}", ENVIRON[list[k]])
        print line
    }' "$template" >"$output"
if grep -n '{{' "$output" >&2; then
    echo "render-template: placeholder left unrendered in $output (from $template)" >&2
    exit 1
fi
