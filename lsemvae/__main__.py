import sys

from lsemvae.cli import main

sys.exit(main())
