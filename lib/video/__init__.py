"""From videos to COCO-17 keypoints: frame sources (OpenCV), pose-estimator backends, person tracking,
extraction to per-video .npz files, and drawing skeletons and predictions on the frames. OpenCV and the
estimators are optional dependencies (requirements-video.txt and the backends' own files), imported
only when used."""
