"""The HTTP side: uploads, job status and results, the live webcam socket and the web pages."""
