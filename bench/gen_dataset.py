#!/usr/bin/env python3
"""Generate the benchmark's mixed dataset (deterministic, ~SIZE_MB in total):
compressible text files in a tree (~40%), incompressible binaries (~30%) and
one large dump-like SQL text file (~30%)."""
import os, random, sys

root = sys.argv[1]
total_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
rng = random.Random(1234)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 10))) for _ in range(5000)]

def text_block(n):
    out, size = [], 0
    while size < n:
        line = ' '.join(rng.choice(words) for _ in range(rng.randint(4, 16))) + '\n'
        out.append(line)
        size += len(line)
    return ''.join(out)

os.makedirs(root, exist_ok=True)
# Text: many files of 4 KB .. 400 KB; a shared pool of blocks keeps generation fast.
pool = [text_block(64 * 1024) for _ in range(64)]
text_target = total_mb * 1024 * 1024 * 40 // 100
written, i = 0, 0
while written < text_target:
    d = os.path.join(root, 'site', f'dir{i % 50:02d}', f'sub{(i // 50) % 20:02d}')
    os.makedirs(d, exist_ok=True)
    n = rng.choice([4, 16, 64, 128, 400]) * 1024
    chunks = []
    have = 0
    while have < n:
        b = rng.choice(pool)
        start = rng.randrange(0, len(b) // 2)
        piece = b[start:start + n - have]
        chunks.append(piece)
        have += len(piece)
    data = ''.join(chunks).encode()
    with open(os.path.join(d, f'page{i:06d}.html'), 'wb') as f:
        f.write(data)
    written += len(data)
    i += 1
# Binaries: incompressible.
bin_target = total_mb * 1024 * 1024 * 30 // 100
os.makedirs(os.path.join(root, 'uploads'), exist_ok=True)
written, j = 0, 0
while written < bin_target:
    n = min(rng.choice([1, 4, 16, 32]) * 1024 * 1024, bin_target - written)
    with open(os.path.join(root, 'uploads', f'img{j:05d}.bin'), 'wb') as f:
        f.write(os.urandom(n))
    written += n
    j += 1
# One dump-like SQL file.
dump_target = total_mb * 1024 * 1024 * 30 // 100
with open(os.path.join(root, 'shop-dump.sql'), 'w') as f:
    f.write('CREATE TABLE orders (id bigint, customer text, total numeric, note text);\n')
    written, k = 0, 0
    while written < dump_target:
        rows = []
        for _ in range(1000):
            k += 1
            rows.append(f"({k}, '{rng.choice(words)} {rng.choice(words)}', {rng.randint(1, 99999) / 100}, '{' '.join(rng.choice(words) for _ in range(6))}')")
        line = 'INSERT INTO orders VALUES ' + ',\n'.join(rows) + ';\n'
        f.write(line)
        written += len(line)
print(f'{root}: {i} text files, {j} binaries, 1 dump')
