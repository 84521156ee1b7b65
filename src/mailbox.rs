//! Reading a user's Maildir for POP: lock, snapshot, streaming reads, and the UPDATE state.
