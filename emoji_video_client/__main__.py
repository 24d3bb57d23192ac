import sys

from emoji_video_client.cli import main

sys.exit(main())
