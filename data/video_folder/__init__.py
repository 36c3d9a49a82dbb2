"""`video_folder` TFDS builder: SHeaP-style head crops from a folder of the user's videos."""
from data.video_folder.video_folder import VideoFolder, VideoFolderConfig  # noqa: F401
