import micropython


def message():
    # Data files ship inside the image next to the modules (read-only).
    folder = __file__.rsplit("/", 1)[0]
    with open(folder + "/data/greeting.txt") as f:
        return f.read().strip()


@micropython.native
def sum_squares(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total
