"""Authentication and credentials: IAM login, VO membership, x509 certificates and proxies."""
