pub mod apply;
pub mod approve;
pub mod check;
pub mod decide;
pub mod explain;
pub mod init;
pub mod keys;
pub mod kill;
