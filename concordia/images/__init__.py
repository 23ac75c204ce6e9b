"""Images: recipes become root filesystems, SquashFS and OCI archives, kept in a store."""
