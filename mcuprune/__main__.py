import sys

from mcuprune.cli import main

sys.exit(main())
