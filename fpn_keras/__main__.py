import sys

from fpn_keras.cli import main

sys.exit(main())
