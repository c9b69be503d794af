#!/usr/bin/env bash
# Tests the storefront signers in tokens/ against the shared vectors
# (tokens/vectors.json), each in its own runtime: JavaScript under Node 22,
# Python's unittest, PHP's command line. The Rust signer is checked against
# the same vectors by protocol/tests/token_vectors.rs, and the edge accepts
# each signer's tokens in tests/tests/edge.rs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require tokens "$node_bin/node" python3 php
echo "tokens: the JavaScript, Python and PHP signers against tokens/vectors.json (a few seconds)"
"$node_bin/node" --test tokens/js/*.test.mjs
python3 -m unittest discover -s tokens/python -v
php tokens/php/test.php
