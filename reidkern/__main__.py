from reidkern.cli import main

raise SystemExit(main())
