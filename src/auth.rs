//! Password verification and hashing for the users file.
