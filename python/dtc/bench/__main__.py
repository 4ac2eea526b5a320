import sys

from dtc.bench import main

raise SystemExit(main(sys.argv[1:]))
