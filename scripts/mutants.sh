#!/usr/bin/env bash
# `make mutants`: shows that the model check bites. Each patch in
# model/mutations/ puts back one problem the settling-keys work fixed (or
# one a later change could make), and names (on its `Scenario:` and
# `Backend:` lines) the model scenario and the backend where that problem
# shows; for each, a scratch copy of the working tree gets the patch, and the
# model check runs that scenario on it until its first counterexample, which
# it must find. (`make model` checks every scenario on the code as it is.) Prints
# the property each mutation breaks and the length of its (shortest)
# counterexample; the traces are kept in target/mutants/. About a minute per
# mutation once the first build is done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out=$here/target/mutants
mkdir -p "$out"
# One target folder for every copy, so only the patched crates rebuild.
export CARGO_TARGET_DIR=$out/target
export STOP_AT_FIRST_FAILURE=1

summary=()
failed=0
for patch in model/mutations/*.patch; do
  name=$(basename "$patch" .patch)
  scenario=$(sed -n 's/^Scenario: //p' "$patch")
  # The backend in front of which the problem shows (both when unnamed):
  # checking only that one keeps a mutation that a naive backend cannot
  # show from exploring the whole naive model first.
  backend=$(sed -n 's/^Backend: //p' "$patch")
  copy=$(mktemp -d)
  trap 'rm -rf "$copy"' EXIT
  # The tree as it is now, tracked and new files alike, without build output.
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy" 2>/dev/null || true
  (cd "$copy" && patch -s -p1 < "$here/$patch")
  echo "mutants: $name ($scenario scenario)"
  if (cd "$copy" && SCENARIO=$scenario BACKEND=$backend cargo run -q --release -p chargeonce-model) > "$out/$name.txt" 2>&1; then
    summary+=("| $name | $scenario | **survived**: no property failed | |")
    failed=1
  else
    line=$(grep -m1 '^model: FAILED' "$out/$name.txt" || true)
    if [ -z "$line" ]; then
      summary+=("| $name | $scenario | did not run (see target/mutants/$name.txt) | |")
      failed=1
    else
      property=$(sed -E 's/^model: FAILED "(.*)" \(([0-9]+) steps\):$/\1/' <<< "$line")
      steps=$(sed -E 's/^model: FAILED "(.*)" \(([0-9]+) steps\):$/\2/' <<< "$line")
      # The run's last heading before the failure names the backend.
      backend=$(sed -nE 's/^model: .* scenario, ([A-Za-z]+) backend.*/\1/p' "$out/$name.txt" | tail -1)
      summary+=("| $name | $scenario | $property ($backend backend) | $steps |")
    fi
  fi
  rm -rf "$copy"
  trap - EXIT
done

echo
echo "| Mutation | Scenario | Property the model check found broken | Counterexample steps |"
echo "|---|---|---|---|"
printf '%s\n' "${summary[@]}"
exit "$failed"
