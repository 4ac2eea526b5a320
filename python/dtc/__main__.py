from dtc.cli.main import main

raise SystemExit(main())
