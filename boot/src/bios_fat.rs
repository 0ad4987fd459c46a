//! Re-packs the FAT partition of the bootloader's BIOS disk image with
//! 32 KiB clusters.
//!
//! Why: the bootloader's BIOS stage 2 (0.11.15, `load_file`) reads a file
//! one FAT cluster at a time, and each cluster costs two firmware disk
//! calls: one for the cluster's FAT entry and one 16 KiB data read (always
//! 16 KiB, even for a 1 KiB cluster). `BiosBoot` formats the partition with
//! `fatfs`'s default for its size, 1 KiB clusters, so a 2.7 MiB kernel took
//! about 5,500 BIOS disk calls (and 45 MiB of reads) under SeaBIOS. With
//! 32 KiB clusters (the largest `fatfs` formats) the same kernel takes about
//! 260 calls. The stage reads the cluster size from the boot sector, so
//! nothing else changes.
//!
//! How: safe host code with the crates the bootloader itself uses
//! (`mbrman` for the partition table, `fatfs` for the file system): find
//! the FAT partition that follows the stage-2 partition, copy its root
//! directory's files out (the layout `BiosBoot` writes has no
//! sub-directories; anything else is refused), format a new FAT volume with
//! 32 KiB clusters and the same label, write the files back in the same
//! order, then replace the partition and its size in the MBR. Everything
//! before the partition (MBR, stage 2) is kept byte for byte.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Cursor, Read, Seek, SeekFrom, Write},
    path::Path,
};

/// Cluster size of the re-packed partition (`fatfs`'s largest).
pub const CLUSTER_BYTES: u32 = 32 * 1024;

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// MBR type of the bootloader's stage-2 partition (`BiosBoot`, stage 2's
/// `BOOTLOADER_SECOND_STAGE_PARTITION_TYPE`); stage 2 boots the partition
/// after it.
const STAGE_2_TYPE: u8 = 0x20;
/// MBR type `BiosBoot` gives the FAT partition (FAT32 with LBA; stage 2
/// accepts any FAT type tag and reads the real type from the boot sector).
const FAT_TYPE: u8 = 0x0c;
/// The largest FAT partition accepted (the bootloader's files are a few
/// MiB; this bounds what is read into memory).
const MAX_PARTITION: u64 = 256 * MIB;

/// Why an image could not be re-packed.
#[derive(Debug)]
pub enum ReclusterError {
    Io(io::Error),
    /// The partition table is not the one `BiosBoot` writes.
    Layout(String),
}

impl fmt::Display for ReclusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReclusterError::Io(error) => write!(f, "{error}"),
            ReclusterError::Layout(message) => write!(f, "unexpected disk layout: {message}"),
        }
    }
}

impl From<io::Error> for ReclusterError {
    fn from(error: io::Error) -> Self {
        ReclusterError::Io(error)
    }
}

impl From<mbrman::Error> for ReclusterError {
    fn from(error: mbrman::Error) -> Self {
        ReclusterError::Layout(format!("partition table: {error}"))
    }
}

fn layout(message: impl Into<String>) -> ReclusterError {
    ReclusterError::Layout(message.into())
}

/// A file of the partition's root directory: its name and contents.
type RootFile = (String, Vec<u8>);

/// The files of a FAT volume's root directory, in directory order, and
/// the volume label.
fn root_files(partition: &mut [u8]) -> Result<(Vec<RootFile>, [u8; 11]), ReclusterError> {
    let fs = fatfs::FileSystem::new(Cursor::new(partition), fatfs::FsOptions::new())?;
    let mut label = [b' '; 11];
    label.copy_from_slice(fs.volume_label_as_bytes());
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry?;
        let name = entry.file_name();
        if entry.is_dir() {
            return Err(layout(format!("directory `{name}` in the FAT partition")));
        }
        let mut data = Vec::new();
        entry.to_file().read_to_end(&mut data)?;
        files.push((name, data));
    }
    Ok((files, label))
}

/// A FAT volume image holding `files` (root directory, in order) with
/// [`CLUSTER_BYTES`] clusters.
fn fat_volume(files: &[RootFile], label: [u8; 11]) -> Result<Vec<u8>, ReclusterError> {
    let cluster = u64::from(CLUSTER_BYTES);
    let data: u64 = files
        .iter()
        .map(|(_, data)| (data.len() as u64).div_ceil(cluster) * cluster)
        .sum();
    // 1 MiB on top covers the reserved sector, the FATs and the root
    // directory (a few KiB at this cluster count) with room to spare.
    let size = (data + MIB).div_ceil(MIB) * MIB;
    if size > MAX_PARTITION {
        return Err(layout(format!(
            "files need {size} bytes, more than {MAX_PARTITION}"
        )));
    }
    let mut volume = vec![0u8; size as usize];
    fatfs::format_volume(
        Cursor::new(&mut volume[..]),
        fatfs::FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER_BYTES)
            .volume_label(label),
    )?;
    {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut volume[..]), fatfs::FsOptions::new())?;
        if fs.cluster_size() != CLUSTER_BYTES {
            return Err(layout(format!(
                "fatfs formatted {} byte clusters, not {CLUSTER_BYTES}",
                fs.cluster_size()
            )));
        }
        {
            let root = fs.root_dir();
            for (name, data) in files {
                let mut file = root.create_file(name)?;
                file.truncate()?;
                file.write_all(data)?;
                file.flush()?;
            }
        }
        fs.unmount()?;
    }
    Ok(volume)
}

/// Re-packs the FAT partition of the `BiosBoot` disk image at `image` with
/// [`CLUSTER_BYTES`] clusters, in place.
pub fn recluster(image: &Path) -> Result<(), ReclusterError> {
    let mut disk = OpenOptions::new().read(true).write(true).open(image)?;
    let disk_len = disk.metadata()?.len();
    let mut mbr = mbrman::MBR::read_from(&mut disk, SECTOR as u32)?;
    let used: Vec<(usize, u8)> = mbr
        .iter()
        .filter(|(_, entry)| entry.is_used())
        .map(|(index, entry)| (index, entry.sys))
        .collect();
    // BiosBoot writes exactly: 1 = stage 2, 2 = FAT.
    let index = match used.as_slice() {
        [(1, STAGE_2_TYPE), (2, FAT_TYPE)] => 2,
        other => return Err(layout(format!("partitions (index, type) {other:x?}"))),
    };
    let start = u64::from(mbr[index].starting_lba) * SECTOR;
    let length = u64::from(mbr[index].sectors) * SECTOR;
    if length > MAX_PARTITION || start + length > disk_len {
        return Err(layout(format!(
            "FAT partition at {start} of {length} bytes, disk {disk_len} bytes"
        )));
    }
    let mut partition = vec![0u8; length as usize];
    disk.seek(SeekFrom::Start(start))?;
    disk.read_exact(&mut partition)?;
    let (files, label) = root_files(&mut partition)?;
    let volume = fat_volume(&files, label)?;

    mbr[index].sectors = u32::try_from(volume.len() as u64 / SECTOR)
        .map_err(|_| layout("FAT partition too large"))?;
    write_disk(&mut disk, &mut mbr, start, &volume)
}

fn write_disk(
    disk: &mut File,
    mbr: &mut mbrman::MBR,
    start: u64,
    volume: &[u8],
) -> Result<(), ReclusterError> {
    disk.set_len(start)?;
    disk.seek(SeekFrom::Start(start))?;
    disk.write_all(volume)?;
    disk.seek(SeekFrom::Start(0))?;
    mbr.write_into(disk)?;
    disk.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("daxbox-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Pseudo-random bytes (a kernel stand-in that is not all zeros).
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// The FAT partition of `image`: its cluster size and root files.
    fn fat_of(image: &Path) -> (u32, Vec<RootFile>) {
        let mut disk = File::open(image).unwrap();
        let mbr = mbrman::MBR::read_from(&mut disk, 512).unwrap();
        let start = u64::from(mbr[2].starting_lba) * 512;
        let length = u64::from(mbr[2].sectors) * 512;
        assert!(start + length <= disk.metadata().unwrap().len());
        let mut partition = vec![0u8; length as usize];
        disk.seek(SeekFrom::Start(start)).unwrap();
        disk.read_exact(&mut partition).unwrap();
        let cluster =
            fatfs::FileSystem::new(Cursor::new(&mut partition[..]), fatfs::FsOptions::new())
                .unwrap()
                .cluster_size();
        let (files, _) = root_files(&mut partition).unwrap();
        (cluster, files)
    }

    /// The BIOS image `build` writes has 32 KiB clusters, the stage-2
    /// partition byte for byte as `BiosBoot` wrote it, and the same files.
    #[test]
    fn bios_image_has_large_clusters_and_the_same_files() {
        let dir = temp_dir("recluster");
        let kernel = dir.join("kernel");
        std::fs::write(&kernel, bytes(300_000, 7)).unwrap();
        let config = dir.join("config.txt");
        std::fs::write(&config, "format=if-blank\n").unwrap();
        let reference = dir.join("reference.img");
        let mut bios = bootloader::BiosBoot::new(&kernel);
        bios.set_ramdisk(&config);
        bios.set_boot_config(&crate::boot_config());
        bios.create_disk_image(&reference).unwrap();

        let arguments = crate::Arguments {
            kernel: kernel.clone(),
            out: dir.join("out"),
            config: Some(config),
            bios: true,
            uefi: false,
            pxe: false,
        };
        crate::build(&arguments).unwrap();
        let image = dir.join("out/bios.img");

        let (cluster, files) = fat_of(&image);
        assert_eq!(cluster, CLUSTER_BYTES);
        let (reference_cluster, reference_files) = fat_of(&reference);
        assert!(reference_cluster < CLUSTER_BYTES);
        let names = |files: &[RootFile]| -> Vec<String> {
            files.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(&files), names(&reference_files));
        for ((name, data), (_, reference_data)) in files.iter().zip(&reference_files) {
            assert_eq!(data, reference_data, "{name}");
        }
        assert!(files
            .iter()
            .any(|(name, data)| name == "kernel-x86_64" && *data == bytes(300_000, 7)));

        // MBR and stage 2: identical up to the FAT partition's size field.
        let new = std::fs::read(&image).unwrap();
        let old = std::fs::read(&reference).unwrap();
        let mbr = mbrman::MBR::read_from(&mut Cursor::new(&new), 512).unwrap();
        let start = mbr[2].starting_lba as usize * 512;
        let size_field = 446 + 16 + 12..446 + 16 + 16;
        assert_eq!(new[..size_field.start], old[..size_field.start]);
        assert_eq!(new[size_field.end..start], old[size_field.end..start]);
        assert_eq!(new.len(), start + mbr[2].sectors as usize * 512);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_layouts_are_refused() {
        let dir = temp_dir("refuse");
        let image = dir.join("blank.img");
        std::fs::write(&image, vec![0u8; 64 * 1024]).unwrap();
        let error = recluster(&image).unwrap_err().to_string();
        assert!(error.contains("unexpected disk layout"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
