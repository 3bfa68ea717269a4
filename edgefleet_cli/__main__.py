import sys

from edgefleet_cli.main import main

sys.exit(main())
