"""Results in an S3-compatible object store (--output_store): uploads, presigned URLs, reads back."""
