import sys

from fif.cli import main

sys.exit(main())
