//! `quorumd acl`.
