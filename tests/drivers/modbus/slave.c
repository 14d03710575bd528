/* A libmodbus slave for the interoperability tests (tests/drivers/modbus/test_interop.py).
 *
 *   slave tcp PORT MAPFILE        Modbus TCP on 127.0.0.1:PORT, any unit id
 *   slave rtu DEVICE UNIT MAPFILE Modbus RTU, 9600 8N1, on DEVICE (a pty), answering UNIT
 *
 * MAPFILE: a first line "SIZES COILS DISCRETE HOLDING INPUT" (how many addresses each table
 * has, starting at 0; anything past them answers exception 2), then lines
 * "TABLE ADDRESS VALUE" with TABLE one of c, d, h, i. Prints "ready" once it listens.
 * Build: gcc slave.c $(pkg-config --cflags --libs libmodbus)
 */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static modbus_mapping_t *load_map(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "slave: cannot open map file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    int sizes[4];
    if (fscanf(f, "SIZES %d %d %d %d", &sizes[0], &sizes[1], &sizes[2], &sizes[3]) != 4) {
        fprintf(stderr, "slave: %s must start with SIZES COILS DISCRETE HOLDING INPUT\n", path);
        fclose(f);
        return NULL;
    }
    modbus_mapping_t *map = modbus_mapping_new(sizes[0], sizes[1], sizes[2], sizes[3]);
    if (map == NULL) {
        fprintf(stderr, "slave: modbus_mapping_new: %s\n", modbus_strerror(errno));
        fclose(f);
        return NULL;
    }
    char table;
    int address;
    unsigned value;
    while (fscanf(f, " %c %d %u", &table, &address, &value) == 3) {
        int ok = address >= 0;
        if (ok && table == 'c' && address < map->nb_bits)
            map->tab_bits[address] = value ? 1 : 0;
        else if (ok && table == 'd' && address < map->nb_input_bits)
            map->tab_input_bits[address] = value ? 1 : 0;
        else if (ok && table == 'h' && address < map->nb_registers)
            map->tab_registers[address] = (uint16_t)value;
        else if (ok && table == 'i' && address < map->nb_input_registers)
            map->tab_input_registers[address] = (uint16_t)value;
        else {
            fprintf(stderr, "slave: %s: %c %d is outside the mapping\n", path, table, address);
            modbus_mapping_free(map);
            fclose(f);
            return NULL;
        }
    }
    fclose(f);
    return map;
}

int main(int argc, char **argv) {
    int tcp = argc == 4 && strcmp(argv[1], "tcp") == 0;
    int rtu = argc == 5 && strcmp(argv[1], "rtu") == 0;
    if (!tcp && !rtu) {
        fprintf(stderr, "usage: slave tcp PORT MAPFILE | slave rtu DEVICE UNIT MAPFILE\n");
        return 2;
    }
    modbus_mapping_t *map = load_map(argv[argc - 1]);
    if (map == NULL)
        return 1;
    modbus_t *ctx = tcp ? modbus_new_tcp("127.0.0.1", atoi(argv[2]))
                        : modbus_new_rtu(argv[2], 9600, 'N', 8, 1);
    if (ctx == NULL) {
        fprintf(stderr, "slave: cannot create the context: %s\n", modbus_strerror(errno));
        return 1;
    }
    int listener = -1;
    if (tcp) {
        listener = modbus_tcp_listen(ctx, 1);
        if (listener == -1) {
            fprintf(stderr, "slave: listen on port %s: %s\n", argv[2], modbus_strerror(errno));
            return 1;
        }
    } else {
        modbus_set_slave(ctx, atoi(argv[3]));
        if (modbus_connect(ctx) == -1) {
            fprintf(stderr, "slave: open %s: %s\n", argv[2], modbus_strerror(errno));
            return 1;
        }
    }
    puts("ready");
    fflush(stdout);
    for (;;) {
        /* One client at a time; when it leaves, wait for the next (the driver reconnects). */
        if (tcp && modbus_tcp_accept(ctx, &listener) == -1) {
            fprintf(stderr, "slave: accept: %s\n", modbus_strerror(errno));
            return 1;
        }
        for (;;) {
            uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
            int rc = modbus_receive(ctx, query);
            if (rc > 0)
                modbus_reply(ctx, query, rc, map);
            else if (rc == -1 && tcp)
                break; /* connection closed */
            /* RTU: a bad CRC or a frame for another unit is dropped; keep listening. */
        }
        modbus_close(ctx);
    }
}
