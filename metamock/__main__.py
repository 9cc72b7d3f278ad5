import sys

from metamock.cli import main

sys.exit(main())
