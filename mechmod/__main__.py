import sys

from mechmod.cli import main

sys.exit(main())
