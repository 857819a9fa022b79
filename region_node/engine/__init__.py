"""The node's data paths: writing and reading disks (with the copy-on-write that makes a backup
point-in-time), taking a backup, filling disks from a backup (restore, a server from an image),
moving chunks in and out for replication, and verifying a backup."""
