import sys

from daqbridge.cli import main

sys.exit(main())
