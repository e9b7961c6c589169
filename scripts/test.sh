#!/usr/bin/env bash
# The project's test command (`npm test`): installs the Debian tools the tests drive,
# builds, then runs every *.test.js under dist/ with node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
npx tsc -p .
if [ -f binding.gyp ] && [ ! -f build/Release/cistern_engine.node ]; then
  npm run install --silent >/dev/null
fi
mapfile -t files < <(find dist -name '*.test.js' -not -path '*/node_modules/*' | sort)
if [ ${#files[@]} -eq 0 ]; then
  echo "no test files found under dist/" >&2
  exit 1
fi
exec node --test --test-reporter=spec "${files[@]}"
