from gemma4_kernels.cli import main

raise SystemExit(main())
