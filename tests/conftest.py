import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

# bench/shapes_folder.py writes user-style COCO / VOC folders (shared with the benchmark).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
