from flexnas.cli import main

raise SystemExit(main())
