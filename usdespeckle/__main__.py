import sys

from usdespeckle.cli import main

sys.exit(main())
