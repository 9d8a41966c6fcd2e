//! Placeholder: the preload library is built in a later issue.
