"""The segmentation service of ``totalseg_serve``: a job store (``jobs``), a worker process (``worker``), the
REST API and web page (``app``) and a DICOM node (``dicom_node``)."""
