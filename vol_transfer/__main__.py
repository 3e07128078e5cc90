import sys

from vol_transfer.cli import main

sys.exit(main())
