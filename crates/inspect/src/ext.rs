//! Reading a file from an ext2/3/4 file system: superblock → group
//! descriptor → inode → directory blocks → file, enough to read
//! `/etc/os-release` of a root file system.
//!
//! Read: block maps (direct, single and double indirect blocks) and extent
//! trees (any depth), linear and hash-tree directories alike (a hash tree's
//! leaves are ordinary directory blocks, its index blocks look like one empty
//! entry), fast and slow symbolic links (`/etc/os-release` is usually a link
//! to `../usr/lib/os-release`). Not read: inline data (a file kept inside its
//! inode, `inline_data`, off by default) and encrypted directories; such a
//! file is simply not found.

use crate::read::{bytes, le16, le32, ReadAt};

/// The most bytes of one directory or file read.
const MAX_READ: u64 = 1 << 20;
/// The most symbolic links followed in one lookup.
const MAX_LINKS: usize = 8;
/// The root directory's inode.
const ROOT: u32 = 2;

/// An ext2/3/4 file system at an offset of the image.
pub(crate) struct Ext<'a> {
    image: &'a dyn ReadAt,
    offset: u64,
    len: u64,
    block: u64,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    /// The block holding the first group descriptor.
    gdt_block: u64,
    groups: u32,
}

/// An inode's type and where its data is.
struct Inode {
    mode: u16,
    size: u64,
    flags: u32,
    block: [u8; 60],
}

impl Inode {
    fn is_dir(&self) -> bool {
        self.mode & 0xF000 == 0x4000
    }

    fn is_link(&self) -> bool {
        self.mode & 0xF000 == 0xA000
    }
}

impl<'a> Ext<'a> {
    /// The file system starting at `offset` (within `len` bytes), if its
    /// superblock is sound enough to follow.
    pub(crate) fn open(image: &'a dyn ReadAt, offset: u64, len: u64) -> Option<Self> {
        let sb = bytes(image, offset + 1024, 1024)?;
        if le16(&sb, 56) != 0xEF53 {
            return None;
        }
        let log = le32(&sb, 24);
        if log > 6 {
            return None;
        }
        let block = 1024u64 << log;
        let blocks_per_group = u64::from(le32(&sb, 32));
        let inodes_per_group = le32(&sb, 40);
        let revision = le32(&sb, 76);
        let inode_size = if revision == 0 {
            128
        } else {
            u64::from(le16(&sb, 88))
        };
        let incompat = le32(&sb, 96);
        let desc_size = if incompat & 0x80 != 0 {
            u64::from(le16(&sb, 254)).max(32)
        } else {
            32
        };
        let blocks = u64::from(le32(&sb, 4))
            | if incompat & 0x80 != 0 {
                u64::from(le32(&sb, 336)) << 32
            } else {
                0
            };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || !(128..=4096).contains(&inode_size)
            || desc_size > 1024
        {
            return None;
        }
        let first_data_block = u64::from(le32(&sb, 20));
        let groups = u32::try_from(blocks.div_ceil(blocks_per_group)).ok()?;
        Some(Ext {
            image,
            offset,
            len,
            block,
            inodes_per_group,
            inode_size,
            desc_size,
            gdt_block: first_data_block + 1,
            groups,
        })
    }

    /// Up to `max` bytes of the regular file at `path` (absolute, `/`
    /// separated), following symbolic links.
    pub(crate) fn read_file(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        let number = self.resolve(path)?;
        let inode = self.inode(number)?;
        if inode.mode & 0xF000 != 0x8000 {
            return None;
        }
        self.data(&inode, max)
    }

    /// The inode of `path`, symbolic links followed.
    fn resolve(&self, path: &str) -> Option<u32> {
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        // The directories walked so far (for `..` and relative links).
        let mut trail = vec![ROOT];
        let mut links = 0;
        while let Some(name) = pending.pop() {
            let here = *trail.last()?;
            match name.as_str() {
                "." => continue,
                ".." => {
                    if trail.len() > 1 {
                        trail.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = self.inode(here)?;
            if !dir.is_dir() {
                return None;
            }
            let found = self.find_in(&dir, name.as_bytes())?;
            let inode = self.inode(found)?;
            if inode.is_link() {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = self.link_target(&inode)?;
                if target.starts_with('/') {
                    trail.truncate(1);
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            } else {
                trail.push(found);
            }
        }
        trail.last().copied()
    }

    fn link_target(&self, inode: &Inode) -> Option<String> {
        // A fast link keeps its target in the block array (no extents).
        let target = if inode.size < 60 && inode.flags & 0x80000 == 0 {
            inode.block[..inode.size as usize].to_vec()
        } else {
            self.data(inode, 4096)?
        };
        String::from_utf8(target).ok()
    }

    fn find_in(&self, dir: &Inode, want: &[u8]) -> Option<u32> {
        let data = self.data(dir, MAX_READ)?;
        for block in data.chunks(self.block as usize) {
            let mut at = 0;
            while at + 8 <= block.len() {
                let inode = le32(block, at);
                let rec_len = usize::from(le16(block, at + 4));
                let name_len = usize::from(block[at + 6]);
                if rec_len < 8 || at + rec_len > block.len() {
                    break; // damaged: the rest of this block is not trusted
                }
                if inode != 0
                    && 8 + name_len <= rec_len
                    && &block[at + 8..at + 8 + name_len] == want
                {
                    return Some(inode);
                }
                at += rec_len;
            }
        }
        None
    }

    fn inode(&self, number: u32) -> Option<Inode> {
        if number == 0 {
            return None;
        }
        let group = (number - 1) / self.inodes_per_group;
        let index = u64::from((number - 1) % self.inodes_per_group);
        if group >= self.groups {
            return None;
        }
        let desc = self.read(
            self.gdt_block * self.block + u64::from(group) * self.desc_size,
            self.desc_size as usize,
        )?;
        let mut table = u64::from(le32(&desc, 8));
        if self.desc_size >= 64 {
            table |= u64::from(le32(&desc, 0x28)) << 32;
        }
        let raw = self.read(
            table
                .checked_mul(self.block)?
                .checked_add(index * self.inode_size)?,
            128,
        )?;
        let size = u64::from(le32(&raw, 4)) | (u64::from(le32(&raw, 108)) << 32);
        Some(Inode {
            mode: le16(&raw, 0),
            size,
            flags: le32(&raw, 32),
            block: raw[40..100].try_into().ok()?,
        })
    }

    /// Up to `max` bytes of an inode's content.
    fn data(&self, inode: &Inode, max: u64) -> Option<Vec<u8>> {
        if inode.flags & 0x1000_0000 != 0 {
            return None; // inline data: not read
        }
        let want = inode.size.min(max);
        let blocks = want.div_ceil(self.block);
        let mut list = Vec::new();
        if inode.flags & 0x80000 != 0 {
            self.extents(&inode.block, blocks, &mut list, 0)?;
        } else {
            self.mapped(&inode.block, blocks, &mut list)?;
        }
        let mut out = Vec::with_capacity(want as usize);
        for physical in list {
            if out.len() as u64 >= want {
                break;
            }
            let take = (want - out.len() as u64).min(self.block) as usize;
            match physical {
                // A hole reads as zeros.
                0 => out.resize(out.len() + take, 0),
                b => out.extend(self.read(b.checked_mul(self.block)?, take)?),
            }
        }
        out.resize(want as usize, 0);
        Some(out)
    }

    /// The physical blocks of the first `count` logical blocks of an extent
    /// tree node (`node`: its header and entries); 0 for holes.
    fn extents(&self, node: &[u8], count: u64, list: &mut Vec<u64>, depth: u32) -> Option<()> {
        if le16(node, 0) != 0xF30A || depth > 5 {
            return None;
        }
        let entries = usize::from(le16(node, 2));
        let node_depth = le16(node, 6);
        for i in 0..entries {
            let e = node.get(12 + 12 * i..24 + 12 * i)?;
            if list.len() as u64 >= count {
                break;
            }
            if node_depth == 0 {
                let logical = u64::from(le32(e, 0));
                let mut len = u64::from(le16(e, 4));
                let uninitialized = len > 32768;
                if uninitialized {
                    len -= 32768;
                }
                let start = (u64::from(le16(e, 6)) << 32) | u64::from(le32(e, 8));
                while (list.len() as u64) < logical.min(count) {
                    list.push(0);
                }
                for j in 0..len {
                    if list.len() as u64 >= count {
                        break;
                    }
                    // Unwritten extents read as zeros.
                    list.push(if uninitialized { 0 } else { start + j });
                }
            } else {
                let leaf = (u64::from(le16(e, 8)) << 32) | u64::from(le32(e, 4));
                let child = self.read(leaf.checked_mul(self.block)?, self.block as usize)?;
                self.extents(&child, count, list, depth + 1)?;
            }
        }
        while (list.len() as u64) < count {
            list.push(0);
        }
        Some(())
    }

    /// The physical blocks of a block-mapped inode (ext2/3): twelve direct
    /// blocks, then single and double indirect blocks.
    fn mapped(&self, block: &[u8], count: u64, list: &mut Vec<u64>) -> Option<()> {
        for i in 0..12 {
            if list.len() as u64 >= count {
                return Some(());
            }
            list.push(u64::from(le32(block, 4 * i)));
        }
        let per = self.block / 4;
        let single = |at: u32, list: &mut Vec<u64>| -> Option<()> {
            if at == 0 {
                for _ in 0..per {
                    list.push(0);
                }
                return Some(());
            }
            let b = self.read(u64::from(at) * self.block, self.block as usize)?;
            for i in 0..per as usize {
                list.push(u64::from(le32(&b, 4 * i)));
            }
            Some(())
        };
        if list.len() as u64 >= count {
            return Some(());
        }
        single(le32(block, 48), list)?;
        if list.len() as u64 >= count {
            return Some(());
        }
        let double = le32(block, 52);
        if double == 0 {
            return Some(());
        }
        let b = self.read(u64::from(double) * self.block, self.block as usize)?;
        for i in 0..per as usize {
            if list.len() as u64 >= count {
                break;
            }
            single(le32(&b, 4 * i), list)?;
        }
        Some(())
    }

    /// `len` bytes at `at` within the file system; `None` past its end.
    fn read(&self, at: u64, len: usize) -> Option<Vec<u8>> {
        if at.checked_add(len as u64)? > self.len {
            return None;
        }
        bytes(self.image, self.offset + at, len)
    }
}

/// The operating system named by an `os-release` file: `PRETTY_NAME`, else
/// `NAME` and `VERSION`.
pub(crate) fn os_release_name(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').trim();
            (!v.is_empty()).then(|| v.to_string())
        })
    };
    value("PRETTY_NAME").or_else(|| match (value("NAME"), value("VERSION")) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (n, _) => n,
    })
}

/// The OS named by the root file system at `offset`: its `/etc/os-release`,
/// else `/usr/lib/os-release`.
pub(crate) fn os_release(image: &dyn ReadAt, offset: u64, len: u64) -> Option<String> {
    let fs = Ext::open(image, offset, len)?;
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| fs.read_file(p, 16 * 1024))
        .and_then(|b| os_release_name(&String::from_utf8_lossy(&b)))
}

#[cfg(test)]
mod tests {
    use super::os_release_name;

    #[test]
    fn os_release_names_by_pretty_name_then_name_and_version() {
        assert_eq!(
            os_release_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"
            )
            .as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
        assert_eq!(
            os_release_name("NAME=Alpine\nVERSION='3.20'\n").as_deref(),
            Some("Alpine 3.20")
        );
        assert_eq!(os_release_name("ID=x\n"), None);
        assert_eq!(
            os_release_name("PRETTY_NAME=\"\"\nNAME=Foo\n").as_deref(),
            Some("Foo")
        );
    }
}
