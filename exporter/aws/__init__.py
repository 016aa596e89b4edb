"""EC2 instance metadata (IMDSv2): who this node is, and the spot notices EC2 posts for it."""
